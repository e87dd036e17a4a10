"""Pure loss functions by kind. Losses import nothing from methods, train or evaluation."""
