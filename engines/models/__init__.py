"""Model zoo: the UniFormer / EMIM family and the registry that names its variants."""

from emim_stream.engines.models import uniformer as uniformer  # registers the variants
from emim_stream.engines.models._registry import ModelCfg, RegisteredModel, build_model, get_model_cfg, list_models

__all__ = ["ModelCfg", "RegisteredModel", "build_model", "get_model_cfg", "list_models"]
