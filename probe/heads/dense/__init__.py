"""Dense probes: segmentation heads on block maps, scored by mIoU (docs/segment.md)."""
