"""The operator library, one sub-package per sensor or task family."""
