"""The stages' code, one module per stage kind of ``ggl.pipeline.registry``: each has
``run(params, files, log)``, reads and writes only the paths ``files`` hands out, and leaves
the science to the domain modules (``ggl.data``, ``ggl.client``, ``ggl.attack``, ...)."""
