"""cloudsd: Stable Diffusion web UIs on a rented GPU, one command up, one command down."""

__version__ = "0.1.0"
