"""siren_lightning.align"""
