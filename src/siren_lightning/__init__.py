"""siren-lightning: Siren text-to-audio in PyTorch Lightning."""

__version__ = "0.1.0"
