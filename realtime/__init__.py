"""mm2face.realtime"""
