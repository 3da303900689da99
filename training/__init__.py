"""mm2face.training"""
