"""siren_lightning.data"""
