from jdnet_plugin.cli.derain import main

if __name__ == "__main__":
    raise SystemExit(main())
