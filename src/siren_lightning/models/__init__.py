"""siren_lightning.models"""
