"""An example dfqbench method plugin: GDFQ with DAFL's information-entropy term (method ``gdfq_ie``)."""
