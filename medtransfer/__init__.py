"""medtransfer: fine-tune pre-trained networks on medical images and see which layers transfer."""

__version__ = "0.1.0"
