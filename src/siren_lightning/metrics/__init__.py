"""siren_lightning.metrics"""
