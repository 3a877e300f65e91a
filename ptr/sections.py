"""The base of config sections read from YAML or handed over by Kubeflow: strict and frozen.

Shared by the pipeline's sections (:mod:`ptr.pipeline.config`) and the cluster settings they hold
(:mod:`ptr.cluster.settings`), which must not import each other's package.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator


def whole_numbers(value):
    """Integral floats back to ints, all the way down: a pipeline hands dict parameters over as JSON
    structs whose numbers are all floats, and DeepSpeed refuses ``warmup_num_steps: 2.0``."""
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Section(BaseModel):
    """Unknown keys are errors; free-form mappings (options, DeepSpeed settings) get their ints back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _free_form_ints(cls, data):
        # only free-form mappings: typed fields convert themselves
        if isinstance(data, dict):
            return {k: whole_numbers(v) if isinstance(v, dict) else v for k, v in data.items()}
        return data
