"""Images: a disk saved as the stream a sender sends (docs/image-format.md)."""
