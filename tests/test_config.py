"""The typed config: validation and the per-model training defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.config import TUNED_TRAIN, AugmentRunConfig, BaseRunConfig, SplitConfig, TrainConfig


def test_each_model_gets_its_validated_lr_and_reg():
    assert TrainConfig().tuned_for("mf").lr == TUNED_TRAIN["mf"]["lr"]
    assert TrainConfig().tuned_for("mf").reg_weight == TUNED_TRAIN["mf"]["reg_weight"]
    assert TrainConfig().tuned_for("lightgcn").lr == TUNED_TRAIN["lightgcn"]["lr"]
    explicit = TrainConfig(lr=0.01).tuned_for("mf")
    assert explicit.lr == 0.01 and explicit.reg_weight == TUNED_TRAIN["mf"]["reg_weight"]  # explicit values win


def test_bad_values_are_rejected_with_the_field_named():
    with pytest.raises(ValidationError, match="monitor"):
        TrainConfig(monitor="auc")
    with pytest.raises(ValidationError, match="split_dir"):
        SplitConfig(method="dir")
    with pytest.raises(ValidationError, match="valid_ratio"):
        SplitConfig(valid_ratio=0.6, test_ratio=0.5)
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(learning_rate=0.1)


def test_augment_run_config_shares_the_base_stage():
    assert AugmentRunConfig().base() == BaseRunConfig()
    assert AugmentRunConfig.model_validate_json(AugmentRunConfig().model_dump_json()) == AugmentRunConfig()


def test_the_budget_is_not_part_of_the_config():
    """The LLM budget is the flows' parameter max_cost_usd, so that overriding `config` cannot drop it: a config
    that still carries one is refused with a message that says where it goes."""
    with pytest.raises(ValidationError, match="pass it as the flow parameter max_cost_usd"):
        AugmentRunConfig.model_validate({"augment": {"stages": ["profiles"], "max_cost_usd": 5.0}})
