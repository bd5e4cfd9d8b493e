from jdnet_plugin.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
