"""Supervised fine-tuning: data preparation and the SFT run."""
