"""Restoration metrics: PSNR and SSIM in the published (Y) and the JDNet authors' (RGB) conventions."""
from .pairs import PAIR_METRICS, PairScores, image_scores, pair_files, paired_dataset, score_pairs
from .psnr_ssim import CONVENTIONS, PSNR, SSIM, psnr, rgb_to_y, ssim

__all__ = ["CONVENTIONS", "PSNR", "SSIM", "psnr", "ssim", "rgb_to_y", "PAIR_METRICS", "PairScores", "image_scores",
           "pair_files", "paired_dataset", "score_pairs"]
