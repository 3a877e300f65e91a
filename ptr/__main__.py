from ptr.cli import main

raise SystemExit(main())
