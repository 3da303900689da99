"""mm2face.viewer"""
