"""What development, the tests and the benchmarks need and the image does not ship: the fake
payment provider, the demo data (`manage.py seed_demo`), real server processes and a throwaway
PostgreSQL cluster on loopback. Installed as a Django app in the development and testing layers
only; setup.cfg's packages and the Dockerfile leave it out."""
