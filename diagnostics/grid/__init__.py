"""The grid's registries: what one run is (RunSpec, presets), and the models, recipes, data,
batch layouts, attention kernels, precisions and devices it can name."""
