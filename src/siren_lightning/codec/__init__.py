"""siren_lightning.codec"""
