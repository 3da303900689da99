"""mm2face-live: real-time MM2Face streaming avatar driver."""
__version__ = "0.1.0"
