"""Exporting an object: its selection cleaned (weak members and floaters dropped) and the Gaussians written
as a standard 3DGS PLY (the object, the scene without it, or a mask's worth)."""
