"""A plugin with timm's own test-sized ResNet (`test_resnet`, 0.37M parameters): the data tests train
real pixels end to end through the CLI, and the model is not what they test, so it is the smallest
real timm model that learns digits in a few epochs on a CPU."""

from harness.models import ModelEntry, register

register(ModelEntry("small_resnet", "resnet", "test_resnet", "timm test_resnet (0.37M params): for the data tests"))
