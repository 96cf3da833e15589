"""The episodes activity model: seeded, hospital-shaped activity with a ground-truth log of every change."""
