from vlmzoo.cli import main

raise SystemExit(main())
