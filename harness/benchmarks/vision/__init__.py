"""Vision class deletion (SalUn's conventions): image data, preprocessing, image classifiers and metrics."""
