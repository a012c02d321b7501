"""Stage 3, images: the gateway image on the control machine. Building it (build), reading a
built archive (archive) and an image's identity across Docker's stores (identity)."""
