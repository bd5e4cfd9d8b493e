"""Deraining datasets (paired, side-by-side, unpaired, clean + synthetic rain) and paired transforms."""
from .datasets import (CLEAN_DIR_NAMES, FORMATS, RAIN_DIR_NAMES, ConcatDataset, DatasetError, PairedImageDataset,
                       SideBySideDataset, SyntheticRainDataset, UnpairedDataset, collate, detect_format,
                       find_pair_dirs, make_dataset, pair_files, pair_key, scale_range)
from .overlap import benchmark_overlaps
from .transforms import PairedAugment, PairedRandomCrop, crop_window, paired_augment, paired_random_crop

__all__ = ["CLEAN_DIR_NAMES", "FORMATS", "RAIN_DIR_NAMES", "ConcatDataset", "DatasetError", "PairedImageDataset",
           "SideBySideDataset", "SyntheticRainDataset", "UnpairedDataset", "collate", "detect_format",
           "find_pair_dirs", "make_dataset", "pair_files", "pair_key", "PairedAugment", "PairedRandomCrop",
           "crop_window", "paired_augment", "paired_random_crop", "benchmark_overlaps", "scale_range"]
