extension Cdp_Profile_V1_AccountTotals {
    /// The totals of an account view with these opportunities and this many persons: closed-won
    /// opportunities count as won, the others not closed as open (amounts added as they are, currencies
    /// not converted).
    public init(opportunities: [Cdp_Profile_V1_UnifiedRecord], persons: Int) {
        self.init()
        self.opportunities = UInt32(opportunities.count)
        for opportunity in opportunities.map(\.record.opportunity) {
            if opportunity.isClosed && opportunity.isWon {
                wonOpportunities += 1
                wonAmount += opportunity.amount
            } else if !opportunity.isClosed {
                openAmount += opportunity.amount
            }
        }
        self.persons = UInt32(persons)
    }
}
