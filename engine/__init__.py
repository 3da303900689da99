"""mm2face.engine"""
