"""recon.calib: camera calibration, camera-info files and undistortion."""
