"""mm2face.benchmarks"""
