from cloudsd.cli.main import main

if __name__ == "__main__":  # `python -m cloudsd`; importing the module (pydoc, pkgutil, a spawned child) runs nothing
    main()
