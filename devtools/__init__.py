"""What development, the tests and the benchmarks need and the image does not ship: the fake
payment provider, the demo data (`manage.py seed_demo`), real server processes and a throwaway
PostgreSQL cluster on loopback. A Django app wherever the checkout has this folder, in every layer;
setup.cfg's packages and the Dockerfile leave it out (docs/development.md, "Where the code is")."""
