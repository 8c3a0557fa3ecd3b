"""siren_lightning.text"""
