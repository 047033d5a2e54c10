"""Data: dataset plugin base, LT subsets in memory, on-device augmentation."""
