# The benchmark's chart (report.py runs it): for each workload, how many
# times faster the first server is than each other one; 1 is parity.
# Variables: data (the table report.py writes), out (the PNG), first (the
# server compared), ncols (how many servers it is compared with).
set terminal png size 1400,640 font ",11"
set output out
set title sprintf("%s compared with each peer (above 1: %s is faster; qd1-*: latency)", first, first)
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set datafile missing "-"
set key top left
set logscale y 2
set yrange [0.0625:*]
set ylabel "times faster (log scale)"
set xtics rotate by -30
set grid ytics
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 lw 2
plot for [i=2:ncols+1] data using i:xtic(1) title columnheader(i)
