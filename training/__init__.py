"""Training pipeline for the project's own small AutoDIR model (issue 5).

data.py          cached photo dataset (Debian wallpaper packages + scikit-image images), fixed
                 validation split, multi-scale patch sampler
degradations.py  the 7 AutoDIR degradations (+ "no"), randomised and seeded
train_scm_demo.py  a small denoising SCM (NAFNet) exported to models/scm-demo
"""
