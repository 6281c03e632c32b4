#!/bin/sh
# Writes energies.txt: a step number and two running sums of transcendental functions per line. The
# sums go through the C library's sin and exp, whose last bits may differ from one machine to another,
# which is why the workflow compares columns 2 and 3 within a tolerance. POSIX sh and awk only.
set -eu

awk 'BEGIN {
    print "# step  potential  kinetic"
    potential = 0; kinetic = 0
    for (step = 1; step <= 100; step++) {
        potential += sin(step * 0.1) / step
        kinetic += exp(-step * 0.01)
        printf "%d %.17g %.17g\n", step, potential, kinetic
    }
}' > energies.txt
echo "wrote energies.txt"
