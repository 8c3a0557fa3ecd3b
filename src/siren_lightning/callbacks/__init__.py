"""siren_lightning.callbacks"""
