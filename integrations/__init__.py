"""Deraining in front of downstream vision models: torchvision pipelines, Ultralytics YOLO, segmenters.

Ultralytics and segmentation-models-pytorch are optional: they are imported only by the functions
that need them (``pip install 'jdnet-plugin[ultralytics]'`` / ``'jdnet-plugin[smp]'``).
"""
from .segmentation import DerainSegmenter, SegmenterAdapter, create_smp_model, smp_preprocessing
from .torchvision_transform import JDNetTransform, derain_image, derain_pil
from .ultralytics_hook import attach_derain, derain_frames, detach_derain, load_yolo

__all__ = ["JDNetTransform", "attach_derain", "detach_derain", "DerainSegmenter", "SegmenterAdapter", "derain_image", "derain_pil",
           "derain_frames", "load_yolo", "create_smp_model", "smp_preprocessing"]
