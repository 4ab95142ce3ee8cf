from vecflow.cli import main

raise SystemExit(main())
