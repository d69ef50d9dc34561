# Shared by the launchers (sourced): print a command, and run it unless
# DRY=1 (--dry-run).

say() { # a command, quoted so that it can be pasted into a shell
  if (($#)); then printf '%q ' "$@" | sed 's/ $//'; fi
  echo
}

act() {
  say "$@"
  if [[ $DRY == 0 ]]; then "$@"; fi
}
