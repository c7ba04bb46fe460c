"""What training and evaluation both run on: the replicas and the numeric precision.

Below `incept.train` and `incept.evaluate`, so that neither has to import the other for it.
"""
