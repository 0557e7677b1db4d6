"""The `medgate` command line: the top layer, over flows, services and the registry."""
