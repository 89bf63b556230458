"""The base of embedforge's own sentence-transformers modules (the lattice, the dynamic head).

A module saved as its ``config_keys`` plus safetensors weights, and rebuilt from them,
so a student directory holding one reloads through sentence-transformers like any other.
"""

from __future__ import annotations

from typing import Any

from sentence_transformers.base.modules.module import Module


class ConfiguredModule(Module):
    """Saves ``config_keys`` and the weights; ``load`` builds ``cls(**config)`` and fills the weights in."""

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> ConfiguredModule:
        hub_kwargs = {
            "subfolder": subfolder,
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        module = cls(**cls.load_config(model_name_or_path=model_name_or_path, **hub_kwargs))
        return cls.load_torch_weights(model_name_or_path=model_name_or_path, model=module, **hub_kwargs)
