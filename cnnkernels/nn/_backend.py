"""The keyword-only `backend` argument every cnnkernels module accepts."""
from __future__ import annotations


class BackendMixin:
    """Pins a module to a backend (None: the one in force, see cnnkernels.backend). Put it
    before the torch.nn base class; subclasses call _set_backend after the base __init__."""

    backend: str | None = None

    def _set_backend(self, backend: str | None) -> None:
        self.backend = backend

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.backend is None else f"{text}, backend={self.backend!r}"
